"""Dataset card templates (Markdown with YAML front matter) filled by ``mapo-data label``."""
