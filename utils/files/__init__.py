"""Floor 0: files that are whole or absent. Atomic writes and folder swaps (``atomic_files``), ``flock`` that tells
a held lock from a file system that cannot lock (``file_locks``), and the test hooks that plant kills and full
disks at named points of a save (``faults``).

May import nothing from utils/; every folder on a higher floor may import it (the loose modules beside it do not).
"""
