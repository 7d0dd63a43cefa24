"""LightningCLI entry point for the YAML configs in ``configs/``.

    python examples/lightning_cli.py fit --config configs/digits.yaml
    python examples/lightning_cli.py fit --config configs/charlm.yaml --trainer.max_steps 50

Models and data modules are chosen in the config (``class_path``), and so is the monitor, under
``trainer.callbacks``.
"""

from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
