"""ceds-deploy: CEDS mediastinal tumour segmentation, from training to fast deployment.

Kept import-light on purpose: `ceds --help` and `import ceds_deploy` must not pull in torch.
"""

__version__ = "0.1.0"
