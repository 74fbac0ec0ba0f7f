"""``samizdat ui``: the local browser UI (DESIGN §2). Talks only to ``samizdat.client``.

``run.py`` starts it, ``guard.py`` decides who may talk to it, ``app.py`` maps HTTP to
``service.py``, which holds the Client; ``static/`` is the page (plain HTML, CSS, JS).
"""
