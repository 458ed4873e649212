"""Quality assurance of masks: metrics (Dice, HD95, AUROC), folder evaluation against labels,
the case-level review flag, and preview pictures."""
