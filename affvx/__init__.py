"""affvx: cross-validation experiments for continuous emotion recognition on clusters."""

__version__ = "0.1.0"
