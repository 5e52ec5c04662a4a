"""The one error type a user sees as a single line (CLIs print it and exit 2)."""


class BigtrainError(ValueError):
    """A problem with user input (a recipe or override, a file, a checkpoint, a shape) whose str() is one
    line: what and where. A ValueError, so that one raised inside a recipe's pydantic validation is
    reported as a validation problem of that key."""


# The name the recipe code uses (`bigtrain.config` re-exports it): the same type, not a second one.
RecipeError = BigtrainError
