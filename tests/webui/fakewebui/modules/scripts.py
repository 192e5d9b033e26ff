"""Script base class, hook argument objects and a ScriptRunner that calls hooks the way the webui does:
each script gets its slice ``p.script_args[args_from:args_to]``, every call is wrapped in try/except +
errors.report (an exception in an extension hook is logged and generation goes on)."""

import re

from modules import errors

AlwaysVisible = object()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess_image_after_composite(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


class ScriptRunner:
    """The alwayson part of the webui's runner: ui() collection, then hooks with each script's arg slice."""

    def __init__(self, script_classes, is_img2img):
        self.scripts = []
        self.inputs = []
        self.infotext_fields = []
        self.paste_field_names = []
        for cls in script_classes:
            script = cls()
            script.is_img2img = is_img2img
            script.is_txt2img = not is_img2img
            script.alwayson = script.show(is_img2img) is AlwaysVisible
            self.scripts.append(script)

    def setup_ui(self):
        """Build every script's ui() (inside a gradio Blocks the caller opened)."""
        for script in self.scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.controls = controls
            script.name = script.title().lower()
            self.inputs += controls
            script.args_to = len(self.inputs)
            self.infotext_fields += script.infotext_fields or []
            self.paste_field_names += script.paste_field_names or []

    def default_args(self):
        """What the API uses for args a request does not give: each component's initial value."""
        return [getattr(c, "value", None) for c in self.inputs]

    def _call(self, name, p, *args, **kwargs):
        for script in self.scripts:
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, name)(p, *args, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def post_sample(self, p, ps):
        self._call("post_sample", p, ps)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp, **kwargs):
        self._call("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p, pp):
        self._call("postprocess_image", p, pp)

    def postprocess_image_after_composite(self, p, pp):
        self._call("postprocess_image_after_composite", p, pp)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)


scripts_data = []
postprocessing_scripts_data = []
scripts_txt2img = None
scripts_img2img = None
scripts_postproc = None


def load_scripts(extension_dir):
    """Import every ``scripts/*.py`` of one extension as the webui does: the extension folder first on
    sys.path during the import, module loaded from its file path, Script / ScriptPostprocessing subclasses
    found in the module's namespace."""
    import importlib.util
    import inspect
    import os
    import sys

    from modules import script_callbacks, scripts_postprocessing

    global scripts_txt2img, scripts_img2img, scripts_postproc
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    script_callbacks.clear_callbacks()
    builtin = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
    paths = [
        os.path.join(d, f)
        for d in (builtin, os.path.join(extension_dir, "scripts"))
        for f in sorted(os.listdir(d))
    ]
    for path in paths:  # the webui's own scripts first, then the extension's
        filename = os.path.basename(path)
        if not filename.endswith(".py"):
            continue
        syspath = sys.path
        sys.path = [extension_dir] + sys.path
        try:
            spec = importlib.util.spec_from_file_location(filename, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path = syspath
        for value in module.__dict__.values():
            if not inspect.isclass(value):
                continue
            if issubclass(value, Script):
                scripts_data.append(value)
            elif issubclass(value, scripts_postprocessing.ScriptPostprocessing):
                postprocessing_scripts_data.append(value)
    scripts_txt2img = ScriptRunner(scripts_data, is_img2img=False)
    scripts_img2img = ScriptRunner(scripts_data, is_img2img=True)
    scripts_postproc = scripts_postprocessing.ScriptPostprocessingRunner(postprocessing_scripts_data)
