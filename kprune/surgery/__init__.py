"""The rebuilder: physically remove units/filters from Keras models.

Public API (a contract; see DESIGN.md):

- `dead_units(model)`: units whose removal cannot change the outputs.
- `remove_units(model, plan)`: a new, smaller model.
- `slim(model)`: `remove_units(model, dead_units(model))`, exact.
- `replace_blocks(model, blocks, data)`: fitted Dense in place of blocks.
"""
