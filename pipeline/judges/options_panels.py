"""The ``--help`` panels of the judges' options (shared by every judge module and the options class)."""

PANEL_WEIGHTS, PANEL_STYLE = "Scorer weights", "Style and safety metrics"
