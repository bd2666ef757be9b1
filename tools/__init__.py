"""What export, quantize and bench share that the runtime does not need (the runtime imports nothing from here).

    assets.shared_assets()              the real small test assets: $INSTANTID_EDGE_ASSETS, else ../shared/assets
                                        beside the source checkout (never relative to the working directory)
    defaults.default_face_photo()       the embedded face photo (scikit-image's astronaut) and its description
    defaults.default_face_pack()        the face pack to use when none is given, and its description
    peak_memory.PeakMemory              peak RSS of this process, anonymous apart from memory-mapped files
    versions.library_versions(names)    installed versions of the named distributions

This package may import the runtime; the runtime must not import it (tests/test_layers.py checks both ways).
"""
