// sd-webui-supir: browser-side helpers for the webui UI (loaded on every page by stable-diffusion-webui).
// Nothing here yet; UI polish such as a before/after comparison of restored images will live in this file.
