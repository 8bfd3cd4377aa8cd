"""Imitating acting teachers: choices, closed-loop evaluation, references, fine-tuning
and its fidelity/capability frontier."""
