"""Extras: run_postprocessing (UI path: the controls' values), run_extras (API path: None for extensions)."""

from modules import devices, scripts, scripts_postprocessing, shared


def run_postprocessing(
    extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args, save_output=True
):
    devices.torch_gc()
    shared.state.begin(job="extras")
    outputs, infos = [], []
    images = image_folder if extras_mode == 1 else [image]
    shared.state.job_count = len(images)
    for image_data in images:
        shared.state.nextjob()
        shared.state.skipped = False
        if shared.state.interrupted or shared.state.stopping_generation:
            break
        image_data = image_data if image_data.mode in ("RGBA", "RGB") else image_data.convert("RGB")
        pp = scripts_postprocessing.PostprocessedImage(image_data)
        scripts.scripts_postproc.run(pp, args)
        if shared.state.skipped:
            continue
        outputs.append(pp.image)
        infos.append(", ".join(f"{k}: {v}" for k, v in pp.info.items()))
    devices.torch_gc()
    shared.state.end()
    return outputs, "\n".join(infos), ""


def run_extras(
    extras_mode,
    resize_mode,
    image,
    image_folder,
    input_dir,
    output_dir,
    show_extras_results,
    gfpgan_visibility=0,
    codeformer_visibility=0,
    codeformer_weight=0,
    upscaling_resize=2,
    upscaling_resize_w=512,
    upscaling_resize_h=512,
    upscaling_crop=True,
    extras_upscaler_1=None,
    extras_upscaler_2=None,
    extras_upscaler_2_visibility=0,
    upscale_first=False,
    save_output=True,
    max_side_length=0,
):
    args = scripts.scripts_postproc.create_args_for_run({"Upscale": {"upscale_enabled": False}})
    return run_postprocessing(
        extras_mode,
        image,
        image_folder,
        input_dir,
        output_dir,
        show_extras_results,
        *args,
        save_output=save_output,
    )
