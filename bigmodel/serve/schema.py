"""The HTTP API's shapes: request bodies, OpenAI's error JSON, and what the OpenAPI schema promises."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

MAX_INPUTS = 128  # texts in one embeddings or classify request
MAX_EXPLAIN_TOKENS = 256  # integrated gradients cost `steps` forward and backward passes of the text
NonEmpty = Annotated[str, Field(min_length=1)]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: StrictBool = False  # a last chunk, before [DONE], with `usage` and no choices


class JsonSchema(BaseModel):
    name: str = "response"
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class Sampling(BaseModel):
    """What completions and chat share. `max_tokens` defaults to 16 (or the server's limit, if lower)."""

    model: str | None = None  # the base model's id, `BASE:ADAPTER` or an adapter's name; any, without adapters
    adapter: str | None = None  # this server's: a LoRA adapter by name (instead of naming it in `model`)
    max_tokens: int | None = Field(None, ge=1)  # the server's limit is checked per request, stated in the schema
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # 0 or -1 (vLLM's way of saying it): every token
    min_p: float = Field(0.0, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, ge=0.01, le=10)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id (a string) to a bias
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what torch's generator takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None  # OpenAI's: JSON, or JSON following a schema
    regex: str | None = None  # this server's: text matching a regular expression ...
    choice: Annotated[list[NonEmpty], Field(min_length=1)] | None = None  # ... or exactly one of these strings

    @field_validator("max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty", "n", "seed", mode="before")
    @classmethod
    def numbers_are_numbers(cls, value: object) -> object:
        if isinstance(value, str | bool):  # JSON "5" or true is not a number, whatever pydantic would make of it
            raise ValueError("must be a JSON number")
        return value

    @field_validator("stream", mode="before")
    @classmethod
    def stream_is_boolean(cls, value: object) -> object:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else (self.stop or [])


TokenIds = Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1)]


class CompletionRequest(Sampling):
    """A prompt is a string or token ids; a request holds one, or a list of up to 8."""

    prompt: NonEmpty | TokenIds | Annotated[list[NonEmpty | TokenIds], Field(min_length=1, max_length=8)]
    logprobs: int | None = Field(None, ge=0)  # alternatives per token; the server's limit is checked per request
    echo: StrictBool = False  # the prompt in front of the text (and its tokens' log-probabilities, the first null)

    _logprobs_number = field_validator("logprobs", mode="before")(Sampling.numbers_are_numbers.__func__)

    def prompts(self) -> list[str | list[int]]:
        one = isinstance(self.prompt, str) or isinstance(self.prompt[0], int)
        return [self.prompt] if one else list(self.prompt)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0)

    _top_logprobs_number = field_validator("top_logprobs", mode="before")(Sampling.numbers_are_numbers.__func__)


class TokenizeRequest(BaseModel):
    """A prompt, or chat messages rendered through the model's template, to token ids."""

    model: str | None = None
    prompt: str = ""
    messages: list[Message] | None = None
    add_special_tokens: StrictBool = True


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: TokenIds


class TextsRequest(BaseModel):
    model: str | None = None
    input: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)]

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class EmbeddingRequest(TextsRequest):
    encoding_format: Literal["float", "base64"] = "float"


class ExplainRequest(BaseModel):
    model: str | None = None
    input: NonEmpty
    target: str | None = None  # the label to explain; default: the predicted one
    steps: int = Field(50, ge=2, le=200)  # integrated gradients' steps


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer in OpenAI's error shape: status, message, error type and the field at fault."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in {
    400: "invalid field, or a route this checkpoint does not serve", 401: "wrong or missing API key",
    413: "prompt longer than the context", 429: "queue full", 503: "model loading, or server shutting down",
}.items()}
EVENT_SCHEMA = {"type": "object", "properties": {"data": {"type": "string"}}}
STREAMED = {200: {"description": "the completion, or with `stream` server-sent events ending in [DONE]",
                  "content": {"text/event-stream": {"schema": EVENT_SCHEMA}}}, **ERRORS}
