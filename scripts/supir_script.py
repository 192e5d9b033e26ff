"""SUPIR in txt2img / img2img: an always-visible accordion; every generated image is restored and upscaled.

Thin: the webui imports this file and registers the Script class below; the logic lives in the
``sd_webui_supir`` package next to it (the webui puts the extension folder on sys.path while importing).
"""

from typing import Any

import modules.scripts as scripts

from sd_webui_supir import script_hooks, ui


class SupirScript(scripts.Script):
    def title(self) -> str:
        return "SUPIR"

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        return ui.script_ui(self, is_img2img)

    def process(self, p, *args: Any) -> None:
        script_hooks.process(p, args, self.is_img2img)

    def before_process_batch(self, p, *args: Any, **kwargs: Any) -> None:
        script_hooks.before_process_batch(p)

    def postprocess_image(self, p, pp, *args: Any) -> None:
        script_hooks.postprocess_image(p, pp)

    def postprocess(self, p, processed, *args: Any) -> None:
        script_hooks.postprocess(p)
