"""Processing objects and process_images with the webui's hook order (WEBUI.md, "Hook order").

The "model" is fake: sampling counts UNet steps and makes a latent from the seed, decoding turns latents
into images (txt2img: a pattern per seed; img2img: the negative of the encoded input, so a throwaway
img2img result is easy to recognise). Grids are not modelled.
"""

import json

import numpy as np
import torch
from PIL import Image

from modules import images, scripts, shared

OPT_F = 8


class DecodedSamples(list):
    already_decoded = True


class StableDiffusionProcessing:
    def __init__(
        self,
        prompt="",
        negative_prompt="",
        seed=-1,
        subseed=-1,
        steps=20,
        cfg_scale=7.0,
        width=64,
        height=64,
        sampler_name="Euler",
        batch_size=1,
        n_iter=1,
        restore_faces=None,
        do_not_save_samples=False,
        outpath_samples="outputs/txt2img-images",
        override_settings=None,
        scripts=None,
        script_args=None,
        is_api=False,
    ):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.seed, self.subseed, self.subseed_strength = seed, subseed, 0
        self.steps, self.cfg_scale, self.sampler_name, self.scheduler = (
            steps,
            cfg_scale,
            sampler_name,
            "Automatic",
        )
        self.width, self.height = width, height
        self.batch_size, self.n_iter = batch_size, n_iter
        self.restore_faces = restore_faces
        self.do_not_save_samples = do_not_save_samples
        self.outpath_samples = outpath_samples
        self.override_settings = override_settings or {}
        self.scripts, self.script_args = scripts, list(script_args or [])
        self.is_api = is_api
        self.extra_generation_params = {}
        self.comments = {}
        self.color_corrections = None
        self.overlay_images = None
        self.sd_model = shared.sd_model
        self.iteration = 0
        self.batch_index = 0
        self.unet_steps = 0  # fake only: sampler steps run
        self.vae_decoded = 0  # fake only: images decoded

    def comment(self, text):
        self.comments[text] = 1

    def save_samples(self):
        state = shared.state
        return (
            shared.opts.samples_save
            and not self.do_not_save_samples
            and not (state.interrupted or state.skipped)
        )

    def setup_prompts(self):
        count = self.batch_size * self.n_iter
        self.all_prompts = [self.prompt] * count
        self.all_negative_prompts = [self.negative_prompt] * count

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def _steps(self, steps=None):
        steps = steps or self.steps
        shared.state.sampling_steps = steps
        for step in range(steps):
            shared.state.sampling_step = step
            shared.total_tqdm.update()  # as the webui's sampler callback does after each step
            self.unet_steps += 1

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_second_pass_steps=0, hr_scale=2.0, hr_upscaler=None, **kwargs):
        super().__init__(**kwargs)
        self.enable_hr, self.hr_second_pass_steps = enable_hr, hr_second_pass_steps
        self.hr_scale, self.hr_upscaler = hr_scale, hr_upscaler

    def init(self, all_prompts, all_seeds, all_subseeds):
        state = shared.state
        if self.enable_hr and not state.processing_has_refined_job_count:
            # Hires. fix: two jobs per generation, and the total bar sized here, before any script's batch
            if state.job_count == -1:
                state.job_count = self.n_iter
            shared.total_tqdm.updateTotal(
                (self.steps + (self.hr_second_pass_steps or self.steps)) * state.job_count
            )
            state.job_count = state.job_count * 2
            state.processing_has_refined_job_count = True
        if self.enable_hr and self.hr_upscaler is not None:
            self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self._steps()
        if self.enable_hr:  # the second pass, at the same size here
            shared.state.nextjob()
            self._steps(self.hr_second_pass_steps)
        latents = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            latents.append(
                torch.rand(4, self.height // OPT_F, self.width // OPT_F, generator=generator) * 2 - 1
            )
        if self.enable_hr and self.hr_upscaler is not None:
            return self._upscale_for_second_pass(torch.stack(latents))
        return torch.stack(latents)

    def _upscale_for_second_pass(self, samples):
        """The webui's sample_hr_pass with an image upscaler: decode, resize_image each image in order
        (the upscaler, then Lanczos to the exact size), encode again at the hires size."""
        width, height = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        encoded = []
        for sample in decode_latent_batch(self.sd_model, samples):
            array = ((sample.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            image = images.resize_image(
                0, Image.fromarray(array), width, height, upscaler_name=self.hr_upscaler
            )
            small = np.asarray(image.resize((width // OPT_F, height // OPT_F)), dtype=np.float32)
            encoded.append(
                torch.cat(
                    [
                        torch.from_numpy(small / 127.5 - 1).permute(2, 0, 1),
                        torch.zeros(1, height // OPT_F, width // OPT_F),
                    ]
                )
            )
        return torch.stack(encoded)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_images=None, resize_mode=0, denoising_strength=0.75, mask=None, **kwargs):
        kwargs.setdefault("outpath_samples", "outputs/img2img-images")
        super().__init__(**kwargs)
        self.init_images = init_images
        self.resize_mode = resize_mode
        self.denoising_strength = denoising_strength
        self.image_mask = mask
        self.encoded_sizes = []  # fake only: sizes the VAE encoded in init()

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if shared.opts.img2img_color_correction and self.color_corrections is None:
            self.color_corrections = [img.convert("RGB").resize((8, 8)) for img in self.init_images]
        encoded = []
        for img in self.init_images:
            image = img.convert("RGB").resize((self.width, self.height))
            self.encoded_sizes.append(image.size)
            array = np.asarray(image.resize((self.width // OPT_F, self.height // OPT_F)), dtype=np.float32)
            encoded.append(torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1))
        if len(encoded) == 1:
            encoded = encoded * self.batch_size
        else:
            self.batch_size = len(encoded)
        self.init_latent = torch.stack(encoded)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self._steps()
        return -self.init_latent  # "denoised": the negative of the input


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    out = []
    for latent in batch:
        image = torch.nn.functional.interpolate(latent[None, :3].float(), scale_factor=OPT_F, mode="nearest")[
            0
        ]
        out.append(image.clamp(-1, 1))
    return out


def apply_color_correction(correction, original_image):
    return original_image  # the webui matches histograms; the fake leaves the image as it is


def _quote(text):
    text = str(text)
    return json.dumps(text, ensure_ascii=False) if ("," in text or ":" in text or '"' in text) else text


def create_infotext(
    p,
    all_prompts,
    all_seeds,
    all_subseeds,
    comments=None,
    iteration=0,
    position_in_batch=0,
    use_main_prompt=False,
    index=None,
    all_negative_prompts=None,
):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    all_negative_prompts = all_negative_prompts or p.all_negative_prompts
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": all_seeds[index],
        "Face restoration": "CodeFormer" if p.restore_faces else None,
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        if isinstance(value, list):
            generation_params[key] = value[index]
        elif callable(value):
            generation_params[key] = value(**locals())
    text = ", ".join(f"{k}: {_quote(v)}" for k, v in generation_params.items() if v is not None)
    negative = f"\nNegative prompt: {all_negative_prompts[index]}" if all_negative_prompts[index] else ""
    return f"{all_prompts[index]}{negative}\n{text}".strip()


class Processed:
    def __init__(self, p, images_list, infotexts=None):
        self.images = images_list
        self.infotexts = infotexts or []
        self.info = self.infotexts[0] if self.infotexts else ""
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.extra_generation_params = p.extra_generation_params
        self.seed = p.all_seeds[0]
        self.all_seeds = p.all_seeds

    def js(self):
        return json.dumps(
            {"infotexts": self.infotexts, "extra_generation_params": self.extra_generation_params},
            default=lambda o: None,
        )


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    return process_images_inner(p)


def process_images_inner(p):
    state = shared.state
    seed = p.seed if p.seed != -1 else 1234
    if p.restore_faces is None:
        p.restore_faces = shared.opts.face_restoration
    p.setup_prompts()
    p.all_seeds = [int(seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(seed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)

    infotexts, output_images = [], []
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    if state.job_count == -1:
        state.job_count = p.n_iter

    for n in range(p.n_iter):
        p.iteration = n
        if state.skipped:
            state.skipped = False
        if state.interrupted or state.stopping_generation:
            break
        p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
        p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
        p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
        p.subseeds = p.all_subseeds[n * p.batch_size : (n + 1) * p.batch_size]
        if p.scripts is not None:
            p.scripts.before_process_batch(
                p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds
            )
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

        samples = p.sample(
            conditioning=None,
            unconditional_conditioning=None,
            seeds=p.seeds,
            subseeds=p.subseeds,
            subseed_strength=p.subseed_strength,
            prompts=p.prompts,
        )
        if p.scripts is not None:
            ps = scripts.PostSampleArgs(samples)
            p.scripts.post_sample(p, ps)
            samples = ps.samples
        if getattr(samples, "already_decoded", False):
            x_samples = samples
        else:
            x_samples = decode_latent_batch(p.sd_model, samples)
            p.vae_decoded += len(x_samples)
        x_samples = torch.stack(x_samples).float()
        x_samples = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)
        state.nextjob()

        if p.scripts is not None:
            p.scripts.postprocess_batch(p, x_samples, batch_number=n)
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            batch_params = scripts.PostprocessBatchListArgs(list(x_samples))
            p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
            x_samples = batch_params.images

        def infotext(index=0, use_main_prompt=False):
            return create_infotext(
                p,
                p.prompts,
                p.seeds,
                p.subseeds,
                use_main_prompt=use_main_prompt,
                index=index,
                all_negative_prompts=p.negative_prompts,
            )

        save_samples = p.save_samples()
        for i, x_sample in enumerate(x_samples):
            p.batch_index = i
            x_sample = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
            if p.restore_faces and save_samples and shared.opts.save_images_before_face_restoration:
                images.save_image(
                    Image.fromarray(x_sample),
                    p.outpath_samples,
                    "",
                    p.seeds[i],
                    p.prompts[i],
                    shared.opts.samples_format,
                    info=infotext(i),
                    p=p,
                    suffix="-before-face-restoration",
                )
            image = Image.fromarray(x_sample)
            if p.scripts is not None:
                pp = scripts.PostprocessImageArgs(image)
                p.scripts.postprocess_image(p, pp)
                image = pp.image
            if p.color_corrections is not None and i < len(p.color_corrections):
                if save_samples and shared.opts.save_images_before_color_correction:
                    images.save_image(
                        image,
                        p.outpath_samples,
                        "",
                        p.seeds[i],
                        p.prompts[i],
                        shared.opts.samples_format,
                        info=infotext(i),
                        p=p,
                        suffix="-before-color-correction",
                    )
                image = apply_color_correction(p.color_corrections[i], image)
            if p.scripts is not None:
                pp = scripts.PostprocessImageArgs(image)
                p.scripts.postprocess_image_after_composite(p, pp)
                image = pp.image
            if save_samples:
                images.save_image(
                    image,
                    p.outpath_samples,
                    "",
                    p.seeds[i],
                    p.prompts[i],
                    shared.opts.samples_format,
                    info=infotext(i),
                    p=p,
                )
            text = infotext(i)
            infotexts.append(text)
            if shared.opts.enable_pnginfo:
                image.info["parameters"] = text
            output_images.append(image)

    p.color_corrections = None
    res = Processed(p, output_images, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
