"""Sliding-window inference: window plans, the batch scheduler, the stitcher, `segment_volume`
for one scan and `segment_folder` for a folder (threaded readers and writers, the run report)."""

from ceds_deploy.inference.folder import FolderRun, segment_folder
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.segment import Segmentation, segment_volume

__all__ = ["FolderRun", "SegmentOptions", "Segmentation", "segment_folder", "segment_volume"]
