"""CLI plumbing shared by ``mapo-data``, ``mapo-train`` and ``mapo-eval``.

- :mod:`.options`: options declared once on config dataclasses, turned into typer commands.
- :mod:`.support`: user errors become one line on stderr and a non-zero exit.
- :mod:`.formatting`: numbers and counts in one-line summaries.
- :mod:`.progress`: progress bars.
"""
