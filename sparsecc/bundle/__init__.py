"""The bundle: atomic writing of the output folder and the one manifest contract."""

__all__: list[str] = []
