"""Lightning callbacks: schedules, loss guard, graceful stop on signals, and (per method) curves."""
