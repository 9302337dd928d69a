"""Who is this (identity), which ticket (threading policy), which agent (assignment)."""
