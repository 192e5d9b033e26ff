// sd-webui-supir: tooltips for the SUPIR accordion (txt2img, img2img, Extras) and the SUPIR settings.
// The webui's hints.js shows titles[label] as the tooltip of an element whose text is that label and runs
// the text through its localization, so translating a label or a tooltip needs no change here.

(function() {
    const supirTitles = {
        "SUPIR model": "SUPIR-v0Q: best quality on most photos. SUPIR-v0F: stays closer to the input (lightly degraded images).",
        "SUPIR upscale by": "Output size as a multiple of the input. SUPIR works at a short side of at least the size set in Settings > SUPIR and resizes to this factor at the end.",
        "SUPIR preset": "Sets steps, CFG, control and noise values to the SUPIR authors' Quality or Fidelity preset.",
        "Skip img2img (upscale the input image directly)": "img2img only: no generation runs; SUPIR restores and upscales the input image itself.",
        "SUPIR caption source": "What describes the image to SUPIR: the generation prompt (extra networks and weights removed), a custom caption, or nothing.",
        "Custom caption": "A short description of the image, used when the caption source is 'Custom caption'.",
        "SUPIR positive prompt": "Added after the caption: the qualities to aim for. The default comes from Settings > SUPIR.",
        "SUPIR negative prompt": "Qualities to steer away from. The default comes from Settings > SUPIR.",
        "SUPIR steps": "Sampler steps. 50 is the authors' default; fewer is faster and softer.",
        "SUPIR sampler": "restore_edm: the authors' restoration-guided EDM sampler. restore_dpmpp_2m: a DPM++ 2M variant.",
        "SUPIR CFG scale": "Text guidance strength at the last step.",
        "Linear CFG": "Ramp the CFG scale linearly from 'CFG start' at the first step to the CFG scale at the last.",
        "CFG start": "CFG scale at the first step when 'Linear CFG' is on.",
        "Control scale": "How strongly the input image controls the result (1 = the authors' default).",
        "Linear control scale": "Ramp the control scale linearly from 'Control start' to the control scale.",
        "Control start": "Control scale at the first step when 'Linear control scale' is on.",
        "Restoration scale": "Pull towards the stage-1 restoration at each step; -1 or 0 turns it off.",
        "S-churn": "Noise added back at each step; more gives more generated detail, 0 is deterministic given the seed.",
        "S-noise": "Scale of the noise S-churn adds.",
        "SUPIR seed (-1: random)": "Seed of SUPIR's noise; -1 draws one (written in the infotext).",
        "Same seed as the image": "Use the generation seed of each image (in Extras: the seed in the image's infotext).",
        "Color fix": "Match the result's colours to the stage-1 image: wavelet (recommended), adain, or none.",
        "Stage 1 (denoise encoder)": "Clean the input with SUPIR's denoise encoder before sampling; turn off for clean inputs it over-smooths.",
    };
    if (typeof titles === "undefined") return; // hints.js not loaded (not inside the webui)
    for (const [label, tip] of Object.entries(supirTitles)) {
        if (!(label in titles)) titles[label] = tip;
    }
})();
