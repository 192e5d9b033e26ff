"""The webui's Extras "Upscale" script (scripts/postprocessing_upscale.py): scale-by mode, upscaler 1, the
upscaled-image cache keyed by upscaler name, and the "Postprocess upscaler" label written after the call."""

import gradio as gr
from modules import scripts_postprocessing, shared

upscale_cache = {}


class ScriptPostprocessingUpscale(scripts_postprocessing.ScriptPostprocessing):
    name = "Upscale"
    order = 1000

    def ui(self):
        return {
            "upscale_enabled": gr.Checkbox(value=True, label="Upscale"),
            "upscale_by": gr.Slider(minimum=1.0, maximum=8.0, step=0.05, value=4, label="Resize"),
            "upscaler_1_name": gr.Textbox(value="None", label="Upscaler 1"),
        }

    def upscale(self, image, info, upscaler, upscale_by):
        info["Postprocess upscale by"] = upscale_by
        cache_key = (hash(image.tobytes()), upscaler.name, 0, upscale_by)
        cached_image = upscale_cache.pop(cache_key, None)
        if cached_image is not None:
            image = cached_image
        else:
            image = upscaler.scaler.upscale(image, upscale_by, upscaler.data_path)
        upscale_cache[cache_key] = image
        return image

    def process(self, pp, upscale_enabled=True, upscale_by=2.0, upscaler_1_name=None):
        if not upscale_enabled or upscaler_1_name in (None, "None"):
            return
        upscaler1 = next(iter([x for x in shared.sd_upscalers if x.name == upscaler_1_name]), None)
        assert upscaler1, f"could not find upscaler named {upscaler_1_name}"
        upscaled_image = self.upscale(pp.image, pp.info, upscaler1, upscale_by)
        pp.info["Postprocess upscaler"] = upscaler1.name
        pp.image = upscaled_image

    def image_changed(self):
        upscale_cache.clear()
