"""InputAccordion: a hidden checkbox whose value is the open state of an accordion (webui's component)."""

import gradio as gr


class FormRow(gr.Row):
    pass


class InputAccordion(gr.Checkbox):
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{InputAccordion.global_index}"
        InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(
            label=kwargs.get("label", "Accordion"), open=value, elem_id=self.accordion_id
        )

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


class FormComponent:
    def get_expected_parent(self):
        return getattr(gr.components, "Form", None)  # gradio 3.41 has it there; newer ones elsewhere


class ToolButton(FormComponent, gr.Button):
    """A small button with one symbol as its text (class "tool")."""

    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    def get_block_name(self):
        return "button"
