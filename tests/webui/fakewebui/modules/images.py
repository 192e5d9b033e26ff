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
