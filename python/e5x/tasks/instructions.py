"""Per-task query instructions: the ones E5-mistral used for MTEB (paper, Table 13).

Only the query side carries an instruction; documents stay bare. Symmetric tasks (STS,
pair classification, bitext) give both sides the instruction, since both are "queries".
"""

from __future__ import annotations

# Task-type defaults of the paper: every STS / summarization / bitext task shares one.
TYPE_DEFAULTS: dict[str, str] = {
    "sts": "Retrieve semantically similar text.",
    "summarization": "Given a news summary, retrieve other semantically similar summaries",
    "bitextmining": "Retrieve parallel sentences.",
    # Not in the paper: the fallback for a retrieval folder with no entry below.
    "retrieval": "Given a query, retrieve relevant documents that answer the query",
}

TASK_INSTRUCTIONS: dict[str, str] = {
    # Retrieval (BEIR)
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "CQADupstack": "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the given question",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
    # Reranking
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
    "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    # Pair classification
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    # Classification
    "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either counterfactual or not-counterfactual",
    "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
    "AmazonReviewsClassification": "Classify the given Amazon review into its appropriate rating category",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six emotions: anger, fear, joy, love, sadness, and surprise",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
    "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
    "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
    "MTOPIntentClassification": "Classify the intent of the given utterance in task-oriented conversation",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either positive, negative, or neutral",
    # Clustering
    "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "BiorxivClusteringP2P": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "BiorxivClusteringS2S": "Identify the main category of Biorxiv papers based on the titles",
    "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
    "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
    "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
    "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given paragraphs",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
}

# Canonical task names by case-/punctuation-folded key, so a folder called ``scifact`` or
# ``trec-covid`` finds its MTEB entry.
_ALIASES: dict[str, str] = {
    "stsb": "STSBenchmark",
    "stsbenchmark": "STSBenchmark",
    "treccovid": "TRECCOVID",
    "touche2020": "Touche2020",
    "fiqa": "FiQA2018",
    "quora": "QuoraRetrieval",
    "climatefever": "ClimateFEVER",
    "dbpediaentity": "DBPedia",
    "msmarco": "MSMARCO",
}


def _fold(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_KEY = {_fold(k): k for k in TASK_INSTRUCTIONS}


def canonical_task_name(name: str) -> str:
    """``scifact`` -> ``SciFact``; unknown names are returned unchanged."""
    key = _fold(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    return _ALIASES.get(key, name)


def instruction_for(task_name: str, task_type: str, overrides: dict[str, str] | None = None) -> str:
    """The query instruction for a task: an override, the paper's, else the type default.

    ``task_type`` is an MTEB task type ("Retrieval", "STS", ...), case-insensitive.
    """
    if overrides:
        for key in (task_name, canonical_task_name(task_name)):
            if key in overrides:
                return overrides[key]
    name = canonical_task_name(task_name)
    if name in TASK_INSTRUCTIONS:
        return TASK_INSTRUCTIONS[name]
    if _fold(name).startswith("cqadupstack"):
        return TASK_INSTRUCTIONS["CQADupstack"]
    t = _fold(task_type)
    if t in TYPE_DEFAULTS:
        return TYPE_DEFAULTS[t]
    if t in ("reranking", "pairclassification", "instructionretrieval"):
        return TYPE_DEFAULTS["retrieval"]
    raise KeyError(
        f"no instruction for task {task_name!r} of type {task_type!r}; pass one "
        "(EvalConfig.instructions / --instruction NAME=TEXT)"
    )
