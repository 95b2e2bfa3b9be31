"""Pure nn.Module code: the teacher loader, students, the cohort and its fused execution."""
