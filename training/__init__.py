"""CEDS semi-supervised training (installed as ceds_deploy.training)."""
