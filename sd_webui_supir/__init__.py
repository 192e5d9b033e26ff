"""The stable-diffusion-webui side of sd-webui-supir.

The webui imports ``scripts/*.py``; those files stay thin and call into this package. Modules that talk
to the webui (``host``, ``runner``, ``script_hooks``, ``extras``, ``upscaler``, ``api``, ``ui``) import
its ``modules`` package; ``args``, ``prompts`` and ``skip_img2img`` are pure and need no webui.
``supir_engine`` never imports anything from here.
"""
