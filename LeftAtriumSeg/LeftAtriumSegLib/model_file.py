"""Model files: network weights in safetensors, the settings needed to use them in its metadata.

safetensors holds tensors and strings only, so loading a file never executes code from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ModelFileError
from .network import UNet2D
from .preprocessing import ModelFrame

FORMAT = "leftatriumseg-model-1"


@dataclass(frozen=True)
class ModelConfig:
    """Everything beside the weights that inference needs, stored in the model file."""

    name: str = "LeftAtriumSeg"
    version: str = "0"
    slices: int = 5  # neighbouring axial slices given to the network as channels
    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    frame: ModelFrame = field(default_factory=ModelFrame)

    def build_network(self) -> UNet2D:
        return UNet2D(in_channels=self.slices, features=self.features)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        values = json.loads(text)
        frame = values.pop("frame")
        return cls(
            frame=ModelFrame(frame["orientation"], tuple(frame["spacing_mm"])),
            features=tuple(values.pop("features")),
            **values,
        )


def save_model(path: str | Path, network: UNet2D, config: ModelConfig) -> None:
    """Write weights and config to ``path`` (written beside it first, then renamed)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    save_file(state, str(partial), metadata={"format": FORMAT, "config": config.to_json()})
    partial.replace(path)


def read_model_config(path: str | Path) -> ModelConfig:
    """The settings stored in a model file, without reading its weights.

    Raises ``ModelFileError`` naming the file for anything that is not a readable
    LeftAtriumSeg model file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a LeftAtriumSeg model (format {metadata.get('format')!r})")
    try:
        return ModelConfig.from_json(metadata["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: unreadable model settings ({error})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet2D, ModelConfig]:
    """Read a model file into an evaluation-mode network on ``device``.

    Raises ``ModelFileError`` naming the file for anything that is not a readable
    LeftAtriumSeg model.
    """
    config = read_model_config(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        network = config.build_network()
        network.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not load ({error})") from None
    # channels_last: oneDNN's fast path for 2D convolutions on CPUs (about 2x at inference).
    return network.to(device, memory_format=torch.channels_last).eval(), config


def parameter_count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
