// The openai npm package against semcache's HTTP door: unary, streaming, and a 404.
// Usage: node openai_door.mjs BASE_URL   (e.g. http://127.0.0.1:8080/v1)
// Prints one JSON object of what it saw; tests/test_http_node.py checks it.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused-in-open-mode", maxRetries: 0 });
const model = "gpt-4o-mini";
const ask = (text) => [{ role: "user", content: text }];

async function unary(text) {
  const { data, response } = await client.chat.completions
    .create({ model, messages: ask(text) })
    .withResponse();
  return {
    content: data.choices[0].message.content,
    status: response.headers.get("x-semcache-cache-status"),
    requestId: response.headers.get("x-semcache-request-id"),
    extension: data.semcache,
  };
}

async function streamed(text) {
  const stream = await client.chat.completions.create({
    model,
    messages: ask(text),
    stream: true,
    stream_options: { include_usage: true },
  });
  let content = "";
  let final = null;
  let usage = null;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (choice?.delta?.content) content += choice.delta.content;
    if (choice?.finish_reason) final = { finishReason: choice.finish_reason, extension: chunk.semcache };
    if (chunk.usage) usage = chunk.usage;
  }
  return { content, final, usage };
}

async function unknownModel() {
  try {
    await client.chat.completions.create({ model: "gpt-9", messages: ask("hello") });
    return null;
  } catch (error) {
    return { isNotFound: error instanceof OpenAI.NotFoundError, status: error.status, code: error.code };
  }
}

const stream = await streamed("How do I bake sourdough bread?");
const miss = await unary("What is machine learning?");
const paraphrase = await unary("Can you explain machine learning?")  // an everyday form: served at once;
const replay = await streamed("How do I bake sourdough bread?");
console.log(JSON.stringify({ stream, miss, paraphrase, replay, notFound: await unknownModel() }));
