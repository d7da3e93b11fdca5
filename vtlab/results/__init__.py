"""What a run leaves behind: its one record (record: name, header, results.json), trackers (tracking: W&B offline,
csv, none), the sweep callback (sweep), the sweep table (summary) and its plots (plots). Import the submodules."""
