"""prefalign: align a text generator to what a classifier wants (DPO / SLiC / IPO via TRL)."""

__version__ = "0.1.0"
