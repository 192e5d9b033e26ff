// sd-webui-supir: tooltips for the SUPIR accordion (txt2img, img2img, Extras) and the SUPIR settings.
// The webui's hints.js shows titles[label] as the tooltip of an element whose text is that label and runs
// the text through its localization, so translating a label or a tooltip needs no change here.

(function() {
    const supirTitles = {
        "SUPIR model": "SUPIR-v0Q: best quality on most photos. SUPIR-v0F: stays closer to the input (lightly degraded images).",
        "SUPIR upscale by": "Output size as a multiple of the input. SUPIR works at a short side of at least the size set in Settings > SUPIR and resizes to this factor at the end.",
        "SUPIR preset": "Sets the sampler values. Quality / Fidelity: the SUPIR authors' 2025 recommendations; (classic): their first demo's values; Lightning: 8 DPM++ 2M steps, only for an SDXL-Lightning base.",
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
        "Progressive (x2 passes: 3x = 2x then 1.5x)": "Enlarge in x2 passes, each a full SUPIR run on the previous pass's output (same seed); for factors beyond 2x.",
        "Stage 1 (denoise encoder)": "Clean the input with SUPIR's denoise encoder before sampling; turn off for clean inputs it over-smooths.",
        "Tile prompts (one line per sampler tile, row-major; 'row,col: text' names one tile)": "A caption per sampler tile (tiled sampling only): line 1 is tile 1,1, then along the row. An empty line, or a tile without a line, uses the caption. Show tile grid numbers the tiles.",
        "Input width": "Width of the input the tile grid preview is drawn for.",
        "Input height": "Height of the input the tile grid preview is drawn for.",
        "Tile grid": "The sampler's tiles, numbered as the tile prompt lines count them.",
        "Pre-upscaler": "How the image is enlarged before stage 1: lanczos (the original's), bicubic, or one of the webui's upscalers (ESRGAN, DAT, ...) for a sharper start.",
    };
    if (typeof titles === "undefined") return; // hints.js not loaded (not inside the webui)
    for (const [label, tip] of Object.entries(supirTitles)) {
        if (!(label in titles)) titles[label] = tip;
    }
})();

// Before/after comparison on SUPIR results in the txt2img and img2img galleries. The webui's
// generation_info JSON gives the generation (job_timestamp) and, with index_of_first_image, the position
// of the selected image in it; the extension's route returns that image as it was before SUPIR. A toggle
// button appears on the gallery when the selected image was upscaled by SUPIR; with it on, a slider overlay
// shows the original on the left of the pointer and SUPIR's result on the right.
(function() {
    if (typeof onAfterUiUpdate === "undefined") return; // not inside the webui
    const TABS = ["txt2img", "img2img"];
    const shown = {}; // tab -> {on, key}

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function generationInfo(tab) {
        const box = app().querySelector(`#generation_info_${tab} textarea`);
        if (!box || !box.value) return null;
        try {
            return JSON.parse(box.value);
        } catch (e) {
            return null;
        }
    }

    // The large image of the gallery's preview: gradio 3.41 puts it straight in div.preview, gradio 4
    // (Forge) wraps it in button.image-button inside button.preview.
    function previewImage(tab) {
        const preview = `#${tab}_gallery .preview`;
        return app().querySelector(`${preview} > img, ${preview} > .image-button > img`);
    }

    function selectedIndex(tab) {
        const buttons = Array.from(app().querySelectorAll(`#${tab}_gallery .thumbnails > .thumbnail-item`));
        const index = buttons.findIndex(b => b.classList.contains("selected"));
        if (index >= 0) return index;
        return buttons.length <= 1 && previewImage(tab) ? 0 : -1;
    }

    function generating(tab) {
        const interrupt = app().querySelector(`#${tab}_interrupt`);
        return !!(interrupt && interrupt.offsetParent);
    }

    // {key, url} of the selected image's original, or null when it is not a SUPIR result of this page
    // (or a generation is running: the gallery then shows previews while the info is the last run's).
    function selectedOriginal(tab) {
        if (generating(tab)) return null;
        const info = generationInfo(tab);
        const index = selectedIndex(tab);
        if (!info || !Array.isArray(info.infotexts) || index < 0 || index >= info.infotexts.length) return null;
        if (!/(^|, )SUPIR scale: /m.test(info.infotexts[index])) return null;
        const position = index - (info.index_of_first_image || 0);
        if (position < 0 || !info.job_timestamp) return null;
        const key = `${info.job_timestamp}/${position}`;
        return {key: key, url: `./supir/v1/before/${encodeURIComponent(info.job_timestamp)}/${position}`};
    }

    function ensureToggle(tab, gallery) {
        let toggle = gallery.querySelector(":scope > .supir-compare-toggle");
        if (toggle) return toggle;
        toggle = document.createElement("button");
        toggle.className = "supir-compare-toggle";
        toggle.type = "button";
        toggle.textContent = "Before / after";
        toggle.title = "Compare with the image before SUPIR: move the pointer over the image";
        toggle.addEventListener("click", function(event) {
            event.stopPropagation();
            const state = shown[tab] || (shown[tab] = {});
            state.on = !state.on;
            update(tab);
        });
        gallery.appendChild(toggle);
        return toggle;
    }

    function ensureOverlay(gallery) {
        let overlay = gallery.querySelector(":scope > .supir-compare");
        if (overlay) return overlay;
        overlay = document.createElement("div");
        overlay.className = "supir-compare";
        overlay.innerHTML = '<img class="supir-compare-before" alt="before SUPIR">' +
            '<div class="supir-compare-divider"></div>' +
            '<span class="supir-compare-label supir-compare-label-before">before</span>' +
            '<span class="supir-compare-label supir-compare-label-after">SUPIR</span>';
        overlay.addEventListener("pointermove", function(event) {
            const box = overlay.getBoundingClientRect();
            setSplit(overlay, (event.clientX - box.left) / Math.max(1, box.width));
        });
        gallery.appendChild(overlay);
        setSplit(overlay, 0.5);
        return overlay;
    }

    function setSplit(overlay, fraction) {
        const percent = Math.min(100, Math.max(0, fraction * 100));
        overlay.style.setProperty("--supir-split", `${percent}%`);
    }

    // Lay the overlay exactly over the picture inside the preview image's box (object-fit: contain; the
    // original has the result's aspect ratio, so it fills the same rectangle).
    function place(overlay, gallery, preview) {
        const g = gallery.getBoundingClientRect();
        const p = preview.getBoundingClientRect();
        const scale = Math.min(p.width / (preview.naturalWidth || p.width), p.height / (preview.naturalHeight || p.height));
        const width = (preview.naturalWidth || p.width) * scale;
        const height = (preview.naturalHeight || p.height) * scale;
        overlay.style.left = `${p.left - g.left + (p.width - width) / 2}px`;
        overlay.style.top = `${p.top - g.top + (p.height - height) / 2}px`;
        overlay.style.width = `${width}px`;
        overlay.style.height = `${height}px`;
    }

    function update(tab) {
        const gallery = app().querySelector(`#${tab}_gallery`);
        if (!gallery) return;
        const state = shown[tab] || (shown[tab] = {});
        const original = selectedOriginal(tab);
        const preview = previewImage(tab);
        const toggle = ensureToggle(tab, gallery);
        toggle.style.display = original && preview ? "" : "none";
        toggle.classList.toggle("supir-compare-on", !!state.on);
        const overlay = gallery.querySelector(":scope > .supir-compare");
        if (!original || !preview || !state.on) {
            if (overlay) overlay.style.display = "none";
            return;
        }
        const o = ensureOverlay(gallery);
        const before = o.querySelector("img");
        if (state.key !== original.key) {
            state.key = original.key;
            before.onerror = function() {
                o.style.display = "none";
                toggle.style.display = "none";
            };
            before.src = original.url;
        }
        o.style.display = "";
        place(o, gallery, preview);
    }

    onAfterUiUpdate(function() {
        TABS.forEach(update);
    });
    window.addEventListener("resize", function() {
        TABS.forEach(update);
    });
})();

// The status line above the SUPIR controls says whether an SDXL base is there. The webui runs
// onOptionsChanged callbacks after a checkpoint has loaded and after Settings are applied: look again then.
(function() {
    if (typeof onOptionsChanged !== "function") {
        return;
    }
    let lastCheckpoint = null;
    onOptionsChanged(function() {
        const options = typeof opts === "object" && opts ? opts : {};
        const key = JSON.stringify([options.sd_model_checkpoint, options.supir_sdxl_base, options.supir_models_path]);
        if (key === lastCheckpoint) {
            return;
        }
        lastCheckpoint = key;
        const root = typeof gradioApp === "function" ? gradioApp() : document;
        root.querySelectorAll("[id$='supir_refresh_status']").forEach(function(button) {
            button.click();
        });
    });
})();
