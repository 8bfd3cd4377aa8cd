"""Imitating acting teachers: choices, closed-loop evaluation, references."""
