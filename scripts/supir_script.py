"""SUPIR in txt2img / img2img.

stable-diffusion-webui imports every ``scripts/*.py`` of an extension at startup. The txt2img / img2img
integration (an always-visible script that restores and upscales the generated images) lands here; until
then this module defines nothing and imports nothing, so importing it inside the webui cannot fail.
"""
