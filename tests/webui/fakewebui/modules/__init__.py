"""A fake of the stable-diffusion-webui 1.10 ``modules`` package, limited to what sd-webui-supir touches.

Built from ../shared/reference/WEBUI.md and the webui's documented behaviour (module names, function
signatures, hook order, shared.state, opts, model offload); none of the webui's code is copied. Tests put
its parent folder first on sys.path.
"""
