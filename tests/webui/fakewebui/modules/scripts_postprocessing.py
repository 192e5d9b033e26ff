"""Extras-tab scripts: PostprocessedImage, ScriptPostprocessing and a runner honouring the operation order."""

from modules import shared


class PostprocessedImage:
    def __init__(self, image):
        self.image = image
        self.info = {}
        self.extra_images = []
        self.nametags = []
        self.disable_processing = False
        self.caption = None


class ScriptPostprocessing:
    filename = None
    controls = None
    args_from = None
    args_to = None
    order = 1000
    name = None
    group = None

    def ui(self):
        pass

    def process(self, pp, **args):
        pass

    def process_firstpass(self, pp, **args):
        pass

    def image_changed(self):
        pass


class ScriptPostprocessingRunner:
    def __init__(self, script_classes):
        self.scripts = [cls() for cls in script_classes]
        self.inputs = []

    def scripts_in_preferred_order(self):
        order = shared.opts.postprocessing_operation_order
        disabled = set(shared.opts.postprocessing_disable_in_extras)

        def score(script):
            rank = order.index(script.name) if script.name in order else len(self.scripts)
            return rank, script.order, script.name

        return sorted((s for s in self.scripts if s.name not in disabled), key=score)

    def setup_ui(self):
        for script in self.scripts_in_preferred_order():
            script.args_from = len(self.inputs)
            script.controls = script.ui()
            self.inputs += list(script.controls.values())
            script.args_to = len(self.inputs)
        return self.inputs

    def run(self, pp, args):
        plan = []
        for script in self.scripts_in_preferred_order():
            values = args[script.args_from : script.args_to]
            plan.append((script, dict(zip(script.controls, values))))
        for script, process_args in plan:
            script.process_firstpass(pp, **process_args)
        for script, process_args in plan:
            if shared.state.skipped:
                break
            shared.state.job = script.name
            script.process(pp, **process_args)

    def create_args_for_run(self, scripts_args):
        """The Extras API path: only the named built-in scripts get values; every other control gets None."""
        scripts = self.scripts_in_preferred_order()
        args = [None] * max(s.args_to for s in scripts)
        for script in scripts:
            given = scripts_args.get(script.name)
            if given is not None:
                for i, name in enumerate(script.controls):
                    args[script.args_from + i] = given.get(name)
        return args

    def image_changed(self):
        for script in self.scripts_in_preferred_order():
            script.image_changed()
