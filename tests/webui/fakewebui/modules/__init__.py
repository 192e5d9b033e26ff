"""A fake of the stable-diffusion-webui 1.10 ``modules`` package, limited to what sd-webui-supir touches.

Built from the webui 1.10's observed behaviour (module names, function signatures, hook order,
shared.state, opts, model offload); none of the webui's code is copied. tests/integration checks the
extension against a real webui. Tests put
its parent folder first on sys.path.
"""
