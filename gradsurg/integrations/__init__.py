"""Drop-in use of `Surgery` inside other libraries' training loops (optional dependencies).

- `gradsurg.integrations.transformers.SurgeryTrainer`: Hugging Face `Trainer`.
- `gradsurg.integrations.lightning.SurgeryModule`: PyTorch Lightning, automatic optimization.
- `gradsurg.integrations.accelerate.backward`: `accelerator.backward` for loss groups.

Each module imports its library when it is imported; a missing one is a one-line error naming
the `pip install` that provides it (`gradsurg.extras`).
"""
