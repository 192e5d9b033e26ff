"""save_image with the webui's signature; the fake records the calls instead of writing files."""

saved: list = []


def save_image(
    image,
    path,
    basename,
    seed=None,
    prompt=None,
    extension="png",
    info=None,
    short_filename=False,
    no_prompt=False,
    grid=False,
    pnginfo_section_name="parameters",
    p=None,
    existing_info=None,
    forced_filename=None,
    suffix="",
    save_to_dirs=None,
):
    saved.append({"image": image, "path": path, "seed": seed, "info": info, "suffix": suffix})
    return f"{path}/{len(saved):05d}{suffix}.{extension}", None


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    """The webui's resize_image, mode 0 (just resize): the named upscaler when enlarging, then Lanczos."""
    from PIL import Image

    from modules import shared

    if resize_mode != 0:
        raise NotImplementedError("the fake resizes with mode 0 only")
    if upscaler_name is not None and upscaler_name != "None" and im.mode != "L":
        scale = max(width / im.width, height / im.height)
        if scale > 1.0:
            upscaler = next(x for x in shared.sd_upscalers if x.name == upscaler_name)
            im = upscaler.scaler.upscale(im, scale, upscaler.data_path)
    if im.width != width or im.height != height:
        im = im.resize((width, height), resample=Image.LANCZOS)
    return im
