"""Keep ``e5x.train(...)`` and ``e5x.clean(...)`` callable once their subpackages are imported.

``e5x.train`` is both the public function and the subpackage ``e5x/train/``. Importing the
subpackage (``import e5x.train.loop``, done by e5x itself) makes Python rebind the package
attribute ``e5x.train`` from the function to the module. Making the module call its stage
function keeps ``e5x.train(config)`` working whichever of the two the name resolves to.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_module_callable(module_name: str, function_name: str) -> None:
    class StageModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = StageModule
