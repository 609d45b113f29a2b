"""The application under the ``dn`` command and the Python face: what a run asks for
(``request``), how it runs (``execute``, ``run``, ``devices``), one slide's job (``slide``), what
already exists (``done``, ``claims``) and what became of each slide (``results``). It knows
nothing of Click, tqdm or printing: it reports through an ``events.Events`` it is handed.
"""
