"""The Lightning side of `task=train` / `task=eval`: the LightningModule (module), the training checkpoint and its
refusals (checkpoint), the Trainer and its loggers (trainer), callbacks (callbacks). Import the submodules."""
