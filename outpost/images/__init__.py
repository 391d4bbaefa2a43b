"""Container images as Outpost carries them: which layers, in what frames, checked how."""
