"""Models. Each model that the maths can read exposes ``bilinear_form()`` (see ``bilinear.decompose``)."""
