"""Ground-floor helpers with no model knowledge: atomic files and folders, non-finite guards, checkpoint
integrity, learning-rate schedules."""
