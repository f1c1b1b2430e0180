"""A Lightning callback: gcshim applied to the LightningModule for the duration of `fit`.

    from gcshim.integrations.lightning import GradientCheckpointing
    trainer = lightning.Trainer(callbacks=[GradientCheckpointing(layers="*Block", every=2)])
"""

from __future__ import annotations

from typing import Any, Optional

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback

from torch import nn

from .. import api
from ..core.spec import LayerSpec, compile_spec


class GradientCheckpointing(Callback):
    """Applies `gcshim.apply(pl_module, layers, **options)` on fit start; removes it on fit end
    (and when fit stops on an exception)."""

    def __init__(self, layers: LayerSpec = "auto", **options: Any) -> None:
        super().__init__()
        compile_spec(layers)  # a bad spec fails here, not at fit start
        self.layers = layers
        self.options = options
        self.handle: Optional[api.Handle] = None

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self.handle = api.apply(pl_module, self.layers, **self.options)

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._remove()

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        self._remove()

    def _remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
