"""SUPIR on the Extras tab (single image, batch, batch from directory), in the user's operation order."""

from typing import Any

from modules import scripts_postprocessing

from sd_webui_supir import extras, ui


class SupirPostprocessing(scripts_postprocessing.ScriptPostprocessing):
    name = "SUPIR"
    order = 1100  # after the webui's own Upscale (1000) unless the user orders them otherwise

    def ui(self) -> dict[str, Any]:
        return ui.extras_ui()

    def process_firstpass(self, pp, **args: Any) -> None:
        extras.start_image(pp)

    def process(self, pp, **args: Any) -> None:
        extras.process(pp, args)
