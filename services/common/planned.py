"""Marks RPCs that a later issue implements, so they answer UNIMPLEMENTED naming the feature."""

from __future__ import annotations

from services.common.errors import Unimplemented


def planned(service_descriptor, features: dict[str, str], default: str = "planned for a later issue"):
    """Class decorator: every RPC of `service_descriptor` the class does not define raises
    Unimplemented with the feature named in `features` (or a generic note)."""

    def decorate(cls):
        for method in service_descriptor.methods:
            if method.name in cls.__dict__:
                continue
            feature = features.get(method.name, default)
            message = f"{service_descriptor.name}.{method.name} is not implemented yet: {feature}"
            if method.server_streaming:

                async def stub_stream(self, request, context, _m=message):
                    raise Unimplemented(_m)
                    yield  # pragma: no cover  (makes this an async generator)

                setattr(cls, method.name, stub_stream)
            else:

                async def stub(self, request, context, _m=message):
                    raise Unimplemented(_m)

                setattr(cls, method.name, stub)
        return cls

    return decorate
