"""Services: the only writers of desktop state (see DESIGN.md section 2)."""
