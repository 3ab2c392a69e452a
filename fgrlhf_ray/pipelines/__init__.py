"""End-to-end jobs built from the library: SFT of the tiny demo policy, the demo (data -> SFT -> RMs -> PPO arms -> report), minimal-edit collection (`fgrlhf make-edits`)."""
